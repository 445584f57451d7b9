"""Test-only builders."""
