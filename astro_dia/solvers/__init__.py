"""Solvers for the kernel and background (functional core of `~astro_dia.DifferenceImager`)."""

from .iterative import solve_iterative  # noqa: F401

__all__ = ["solve_iterative"]
