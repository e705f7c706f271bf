"""Protocol stand-ins for servers the project talks to (127.0.0.1, ephemeral ports)."""
