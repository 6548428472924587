"""Backends: how one MTA flushes exactly one target. Registry and interface in ``base``."""
