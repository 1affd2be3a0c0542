"""Shared fakes, builders and kits for the tests (on the pytest path: ``from support.<module> import ...``).

A module here is imported by several test files; anything one test file needs stays in that file.
"""
