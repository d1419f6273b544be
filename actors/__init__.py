"""Entities (plain objects: playlist, device group, user session) and the hosts that own them."""
