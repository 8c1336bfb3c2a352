"""The campaign's traffic: client threads that train (with an Idempotency-Key, with and without
`?wait=true`), predict, send feedback (a prediction with `?remember=true`, then its labels), and
register and delete short-lived tenants. A request whose answer was lost is sent again as it is
(same Idempotency-Key, same prediction ids) until an answer settles whether it was accepted, as
a careful client would.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import redis

from service.feedback.service import _idempotency_key as feedback_idempotency_key
from service.queue.keys import ShardKeys
from service.testing.campaign.clients import (
    INPUT_WIDTH,
    KEY_PREFIX,
    NUM_CLASSES,
    SETTLE_SECONDS,
    ClientRecord,
    Tenant,
    send_until_settled,
)
from service.testing.processes import wait_until

MAX_SHORT_LIVED = 3
"""Short-lived tenants alive at once at most."""


def feedback_token(prefix: str, index: int, prediction_ids: list[str]) -> str:
    """The Redis key that marks a feedback batch as queued: the queue's put token under the
    idempotency key that `FeedbackService.label` derives from the context and the ids (its own
    function, so that the two cannot drift apart)."""
    return ShardKeys(prefix).put_token(feedback_idempotency_key(index, prediction_ids))


class Traffic(threading.Thread):
    """One client: trains, predicts, sends feedback, and (the first client) registers and
    deletes short-lived tenants, until told to stop; every request settled before the next."""

    def __init__(
        self,
        number: int,
        base_url: str,
        record: ClientRecord,
        seed: int,
        stop: threading.Event,
        redis_url: str,
    ) -> None:
        super().__init__(name=f"campaign-traffic-{number}", daemon=True)
        self.number = number
        self.record = record
        self.rng = np.random.default_rng([seed, 1, number])
        self.seed = seed
        self.stop = stop
        self.redis_url = redis_url
        self.client = httpx.Client(base_url=base_url, timeout=15)
        self.sent = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                time.sleep(float(self.rng.uniform(0, 0.05)))
        except BaseException as error:  # reported by the campaign, which would not see it
            self.failure = error
        finally:
            self.client.close()

    def step(self) -> None:
        draw = float(self.rng.random())
        if draw < 0.40:
            self.train(wait=False)
        elif draw < 0.55:
            self.train(wait=True)
        elif draw < 0.80:
            self.predict()
        elif draw < 0.90:
            self.feedback()
        elif self.number == 0:
            self.register_or_delete(delete=draw >= 0.95)
        else:
            self.predict()

    def _rows(self, most: int) -> tuple[int, list[list[float]], list[int]]:
        rows = int(self.rng.integers(1, most + 1))
        inputs = self.rng.random((rows, INPUT_WIDTH)).round(3).tolist()
        labels = self.rng.integers(0, NUM_CLASSES, rows).tolist()
        return rows, inputs, labels

    def _pick(self, keys: list[str]) -> str:
        # One draw whatever the list, so the traffic's draws stay in step across runs.
        return keys[int(self.rng.random() * len(keys))]

    def train(self, wait: bool) -> None:
        key = self._pick(self.record.trainable())
        rows, inputs, labels = self._rows(16)
        self.sent += 1
        idempotency_key = f"{self.seed}-{self.number}-{self.sent}"
        what = f"train{'?wait' if wait else ''} {key} ({idempotency_key})"
        answer = send_until_settled(
            self.client,
            "POST",
            f"/train/{key}",
            params={"wait": "true"} if wait else None,
            json={"inputs": inputs, "labels": labels},
            headers={"Idempotency-Key": idempotency_key},
            # Waiting, 504 says the batch is queued and will be applied.
            settled_by=lambda s: (s < 500 and s != 429) or (wait and s == 504),
        )
        route = "train_wait" if wait else "train"
        if answer.status in (200, 202, 504):
            self.record.accept(key, rows)
            self.record.count(f"{route} accepted")
        elif answer.status == 404 and self.record.tenants[key].deleting:
            self.record.count(f"{route} of a deleted context")
        elif answer.response is None:
            self.record.count(f"{route} unsettled")
            if answer.ambiguous:
                self.record.note_unsettled(what)
        else:
            self.record.note_unexpected(what, answer.response)

    def predict(self) -> None:
        key = self._pick(self.record.trainable())
        _, inputs, _ = self._rows(8)
        try:
            response = self.client.post(f"/predict/{key}", json={"inputs": inputs})
        except httpx.TransportError:
            self.record.count("predict failed")
            return
        if response.status_code == 200:
            self.record.count("predict answered")
        elif response.status_code == 404 and self.record.tenants[key].deleting:
            self.record.count("predict of a deleted context")
        elif response.status_code >= 500:
            self.record.count("predict failed")
        else:
            self.record.note_unexpected(f"predict {key}", response)

    def feedback(self) -> None:
        key = self._pick(self.record.trainable())
        rows, inputs, labels = self._rows(8)
        predicted = send_until_settled(
            self.client,
            "POST",
            f"/predict/{key}",
            params={"remember": "true"},
            json={"inputs": inputs},
            seconds=10,
        )
        if predicted.status != 200:
            self.record.count("feedback without a prediction")
            return
        assert predicted.response is not None
        ids: list[str] = predicted.response.json()["prediction_ids"]
        what = f"feedback {key} ({len(ids)} ids)"
        answer = send_until_settled(
            self.client,
            "POST",
            f"/feedback/{key}",
            json={"prediction_ids": ids, "labels": labels},
        )
        if answer.status == 202:
            self.record.accept(key, rows)
            self.record.count("feedback accepted")
        elif answer.status == 409 and answer.ambiguous:
            # An earlier try claimed the ids: whether it queued them is in Redis.
            if self._feedback_was_queued(key, ids):
                self.record.accept(key, rows)
                self.record.count("feedback accepted")
            else:
                # The service says the ids have their labels, yet it never queued them.
                self.record.count("feedback claimed but never queued")
                with self.record.lock:
                    self.record.labels_lost.append(
                        f"{key}: {len(ids)} ids at {time.strftime('%H:%M:%S')}"
                    )
        elif answer.status == 404 and self.record.tenants[key].deleting:
            self.record.count("feedback of a deleted context")
        elif answer.response is None:
            self.record.count("feedback unsettled")
            if answer.ambiguous:
                self.record.note_unsettled(what)
        else:
            self.record.note_unexpected(what, answer.response)

    def _feedback_was_queued(self, key: str, ids: list[str]) -> bool:
        token = feedback_token(KEY_PREFIX, self.record.tenants[key].index, ids)
        found: list[bool] = []

        def look() -> bool:
            with redis.Redis.from_url(self.redis_url, socket_timeout=2) as client:
                found.append(bool(client.exists(token)))
            return True

        wait_until(look, SETTLE_SECONDS, 0.25, what="Redis answering")
        return found[-1]

    def register_or_delete(self, delete: bool) -> None:
        short_lived = self.record.short_lived()
        if delete and short_lived:
            self.delete(self._pick(short_lived))
        elif len(short_lived) < MAX_SHORT_LIVED:
            self.sent += 1
            self.register(f"short-{self.seed}-{self.sent}")
        else:
            self.predict()

    def register(self, key: str) -> None:
        answer = send_until_settled(self.client, "POST", "/contexts", json={"key": key})
        if answer.status in (200, 201):
            assert answer.response is not None
            tenant = Tenant(key, int(answer.response.json()["index"]), short_lived=True)
            with self.record.lock:
                self.record.tenants[key] = tenant
            self.record.count("register")
        elif answer.response is None:
            self.record.count("register unsettled")
            if answer.ambiguous:
                self.record.note_unsettled(f"register {key}")
        else:
            self.record.note_unexpected(f"register {key}", answer.response)

    def delete(self, key: str) -> None:
        tenant = self.record.tenants[key]
        with self.record.lock:
            tenant.deleting = True
        answer = send_until_settled(self.client, "DELETE", f"/contexts/{key}")
        # A 404 after an ambiguous try: that try deleted it.
        if answer.status == 204 or (answer.status == 404 and answer.ambiguous):
            with self.record.lock:
                tenant.deleted = True
                tenant.deleted_at = time.time()
            self.record.count("delete")
        elif answer.response is None:
            self.record.count("delete unsettled")
            self.record.note_unsettled(f"delete {key}")
        else:
            self.record.note_unexpected(f"delete {key}", answer.response)
