"""Adapter methods; each registers itself in ADAPTERS."""

from .base import ADAPTERS, AdapterConfig, AdapterMethod, get_adapter, register_adapter

__all__ = ["ADAPTERS", "AdapterConfig", "AdapterMethod", "get_adapter", "register_adapter"]
