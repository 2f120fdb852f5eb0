"""Helpers every layer may use and that know nothing of the science: text for messages, bounded YAML, redaction."""
