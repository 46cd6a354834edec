"""
:func:`refuses_with_deferred`: a provider method's argument checks raise, its
caller gets a failed Deferred.

Every :class:`~txcb.interfaces.IBucket` method returns a Deferred, even for a
key or a TTL it refuses before doing anything.  A method whose checks are
plain calls that raise :class:`~txcb.errors.CouchbaseError` is wrapped once
instead of each method repeating ``try: checks / except CouchbaseError:
return fail(e)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar, cast

from twisted.internet.defer import Deferred, fail

from txcb.errors import CouchbaseError

__all__ = ["refuses_with_deferred"]

M = TypeVar("M", bound=Callable[..., Deferred])


def refuses_with_deferred(method: M) -> M:
    """Turn a CouchbaseError the method raises into a failed Deferred it returns."""
    @functools.wraps(method)
    def refusing(*args: Any, **kwargs: Any) -> Deferred:
        try:
            return method(*args, **kwargs)
        except CouchbaseError as e:
            return fail(e)
    return cast(M, refusing)
