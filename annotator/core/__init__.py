"""The core both apps use."""
