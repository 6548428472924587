"""The policy: who may flush what, compiled for fast decisions, plus limits."""
