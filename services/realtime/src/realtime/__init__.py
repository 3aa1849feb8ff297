"""The realtime WebSocket service: job events fanned out to their owners, with resume."""
