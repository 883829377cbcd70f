"""Threadline: persistent LLM conversation threads."""

__version__ = "0.1.0"
