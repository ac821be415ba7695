"""Delivery handles of the client's records, and what a failure reads as."""

from __future__ import annotations

from typing import Self

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from streamcore.exceptions import DeliveryError


def reason(exc: BaseException) -> str:
    """What a record's failure reads as in a DeliveryError: the cause, not kafka-python's batch bookkeeping."""
    if isinstance(exc, KafkaTimeoutError):  # its text names a batch and a partition, not the cause
        return "no acknowledgement from the broker in time (is it reachable?)"
    text = str(exc)  # kafka-python's errors start with their class name already
    return (text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}")[:300]


class Delivery:
    """One published record: pending, delivered (``partition``, ``offset``) or failed (``error``)."""

    def __init__(self, post_id: str, future: FutureRecordMetadata | None = None, error: str | None = None, *,
                 limit_s: float | None = None) -> None:
        self.post_id = post_id
        self._future = future
        self._error = error
        self._limit_s = limit_s

    def done(self) -> bool:
        """True once the broker answered or the client gave up on the record."""
        return self._future is None or self._future.is_done

    @property
    def error(self) -> str | None:
        """Why the record was not delivered; None while pending and once delivered."""
        if self._error is None and self._future is not None and self._future.failed():
            self._error = reason(self._future.exception)
        return self._error

    @property
    def partition(self) -> int | None:
        return self._future.value.partition if self._future is not None and self._future.succeeded() else None

    @property
    def offset(self) -> int | None:
        return self._future.value.offset if self._future is not None and self._future.succeeded() else None

    def wait(self, timeout: float | None = None) -> Self:
        """Block until the record is delivered, for ``timeout`` seconds at most (by default a little longer than
        the client's ``delivery_timeout_s``).

        Raises:
            DeliveryError: the record was not delivered.
            TimeoutError: still pending after ``timeout`` seconds.
        """
        timeout = self._limit_s if timeout is None else timeout
        if self._future is not None and not self._future.is_done:
            try:
                self._future.get(timeout)
            except KafkaError:
                pass  # a failure is read from the future below, a wait that ran out by is_done
            if not self._future.is_done:
                raise TimeoutError(f"{self.post_id}: no answer from the broker within {timeout}s")
        if self.error is not None:
            raise DeliveryError({self.post_id: self.error})
        return self

    def __repr__(self) -> str:
        state = "pending" if not self.done() else f"failed ({self.error})" if self.error else f"@{self.offset}"
        return f"Delivery({self.post_id!r}, {state})"


def close_producer(producer: KafkaProducer) -> None:
    try:
        producer.close(timeout=5)
    except KafkaTimeoutError:
        # kafka-python 3.0's close() gives up before stopping its I/O thread when records are still outstanding
        # (they were reported by flush): stop it the way close() does after its timeout.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
