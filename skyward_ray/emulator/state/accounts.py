"""Accounts: renters, their API keys (and each instance's CONTAINER_API_KEY), credit, and the account's SSH keys."""

from __future__ import annotations

import secrets

from skyward_ray.emulator.errors import error
from skyward_ray.emulator.records import AccountSshKey, Caller, User
from skyward_ray.emulator.state.core import MarketCore


class AccountStore(MarketCore):
    """Users by id and every API key by its text; an instance key is scoped to its instance."""

    def add_user(self, *, api_key: str | None = None, credit: float = 1000.0, username: str | None = None) -> User:
        with self.lock:
            user_id = 100_000 + len(self.users) * 7 + 1
            key = api_key or secrets.token_hex(32)
            if key in self.api_keys:
                raise ValueError("api_key: already in use by another user")
            user = User(user_id=user_id, api_key=key, username=username or f"renter{len(self.users) + 1}",
                        email=f"renter{len(self.users) + 1}@emulator.invalid", credit=float(credit))
            self.users[user_id] = user
            self.api_keys[key] = (user_id, None)
            return user

    def authenticate(self, key: str | None) -> Caller | None:
        """The caller behind an API key, or None when the key is unknown."""
        if not key:
            return None
        with self.lock:
            entry = self.api_keys.get(key)
            if entry is None:
                return None
            user_id, scope = entry
            return Caller(self.users[user_id], scope)

    def set_credit(self, credit: float, user_id: int | None, default: User) -> User:
        with self.lock:
            user = self.users.get(user_id) if user_id is not None else default
            if user is None:
                raise error(404, "not_found", f"User {user_id} not found.")
            user.credit = float(credit)
            if user.credit > 0:
                user.credit_exhausted = False
            return user

    def create_ssh_key(self, user: User, public_key: str) -> AccountSshKey:
        with self.lock:
            self.next_ssh_key_id += 1
            record = AccountSshKey(self.next_ssh_key_id, user.user_id, public_key, self.clock.epoch())
            user.ssh_keys[record.key_id] = record
            return record

    def update_ssh_key(self, user: User, key_id: int, public_key: str) -> None:
        with self.lock:
            record = user.ssh_keys.get(key_id)
            if record is None:
                raise error(404, "not_found", f"SSH key {key_id} not found.")
            record.public_key = public_key

    def delete_ssh_key(self, user: User, key_id: int) -> None:
        with self.lock:
            if user.ssh_keys.pop(key_id, None) is None:
                raise error(404, "not_found", f"SSH key {key_id} not found.")
