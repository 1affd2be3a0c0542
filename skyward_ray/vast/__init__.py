"""Typed REST client for Vast.ai (httpx + pydantic). Never imports Ray."""
