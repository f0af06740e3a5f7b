"""The config file: its model (dataclasses), loading and validation against the JSON Schema."""
