"""The registry's answers, shared by every ModelDeployment that asks the same question, kept fresh.

A question is (tracking URL, model URI, and the credentials Secret with its namespace, or none): an
answer obtained with a tenant's credentials is never given to another namespace or Secret. Each
question is asked again when the shortest refresh interval of those that follow it has passed, by
the resolver's refresher, not by a reconcile per ModelDeployment: when the answer changes (or the
registry starts failing), exactly its followers are enqueued. A thousand ModelDeployments following
one alias cost one registry call per interval and no reconcile at all while the alias stays put.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .names import CANARY, NEWEST, STABLE
from .registry import ResolvedModel

Key = tuple[str, str]  # (namespace, name)
Follower = tuple[Key, str]  # ((namespace, name), track)
#: (tracking URL, model URI, (namespace, Secret name) or None)
Question = tuple[str, str, tuple[str, str] | None]
TRACKS = (STABLE, CANARY, NEWEST)
#: Shared answers kept at most; the oldest are dropped first when there are more.
MAX_ANSWERS = 20_000


@dataclass
class _Followed:
    #: What the refresher needs to ask: the latest follower's (namespace, spec, uri, ref).
    recipe: tuple[Any, ...]
    followers: dict[Follower, float] = field(default_factory=dict)
    next_due: float = 0.0
    asking: bool = False
    #: Expedited while being asked: the answer in flight may predate the news, so ask once more.
    again: bool = False
    #: A webhook made this question due: its next answer is credited to the webhook.
    expedited: bool = False


class Answers:
    def __init__(self, clock: Callable[[], float], enqueue: Callable[[Key], None]) -> None:
        self.clock = clock
        self.enqueue = enqueue
        #: question → (answer, when, what made us ask: "poll" | "webhook" | "lookup")
        self._answers: dict[Question, tuple[ResolvedModel, float, str]] = {}
        self._questions: dict[Question, _Followed] = {}
        self._following: dict[Follower, Question] = {}
        self._lock = threading.Lock()

    # -- the answers ------------------------------------------------------------------------------
    def fresh(self, question: Question, max_age: float) -> tuple[ResolvedModel, float, str] | None:
        """The shared answer, when it came and why it was asked, if it is younger than `max_age`."""
        with self._lock:
            answer = self._answers.get(question)
        return answer if answer is not None and self.clock() - answer[1] < max_age else None

    def put(self, question: Question, resolved: ResolvedModel, at: float, via: str = "lookup") -> bool:
        """Record an answer; True when it differs from the one before."""
        with self._lock:
            before = self._answers.get(question)
            self._answers[question] = (resolved, at, via)
            if len(self._answers) > MAX_ANSWERS:
                for q in sorted(self._answers, key=lambda q: self._answers[q][1])[: MAX_ANSWERS // 4]:
                    del self._answers[q]
        return before is None or before[0] != resolved

    # -- who follows what ---------------------------------------------------------------------------
    def follow(self, follower: Follower, question: Question, refresh: float, recipe: tuple[Any, ...]) -> None:
        with self._lock:
            previous = self._following.get(follower)
            if previous is not None and previous != question:
                self._drop(follower, previous)
            followed = self._questions.get(question)
            if followed is None:
                followed = self._questions[question] = _Followed(recipe, next_due=float("inf"))
            followed.recipe = recipe
            followed.followers[follower] = refresh
            followed.next_due = min(followed.next_due, self._last_answer(question) + refresh)
            self._following[follower] = question

    def follows(self, follower: Follower) -> bool:
        with self._lock:
            return follower in self._following

    def unfollow(self, key: Key, track: str | None = None) -> None:
        """Stop following for this ModelDeployment (one track, or both)."""
        with self._lock:
            for t in (track,) if track else TRACKS:
                question = self._following.get((key, t))
                if question is not None:
                    self._drop((key, t), question)

    def _drop(self, follower: Follower, question: Question) -> None:
        self._following.pop(follower, None)
        followed = self._questions.get(question)
        if followed is not None:
            followed.followers.pop(follower, None)
            if not followed.followers:
                del self._questions[question]

    def _last_answer(self, question: Question) -> float:
        answer = self._answers.get(question)
        return answer[1] if answer is not None else self.clock()

    # -- the refresher's side -----------------------------------------------------------------------
    def due(self) -> list[tuple[Question, tuple[Any, ...]]]:
        """Questions whose answer is due again (each marked as being asked until `answered`)."""
        now = self.clock()
        out = []
        with self._lock:
            for question, followed in self._questions.items():
                if not followed.asking and now >= followed.next_due:
                    followed.asking = True
                    out.append((question, followed.recipe))
        return out

    def answered(self, question: Question, resolved: ResolvedModel | None) -> None:
        """The refresher's answer (None: the registry failed). Enqueues the followers when it matters."""
        now = self.clock()
        with self._lock:
            followed = self._questions.get(question)
            via = "webhook" if followed is not None and followed.expedited else "poll"
        changed = resolved is None or self.put(question, resolved, now, via)
        with self._lock:
            followed = self._questions.get(question)
            if followed is None:
                return
            followed.asking = False
            followed.expedited = followed.again
            followed.next_due = 0.0 if followed.again else now + min(followed.followers.values(), default=60.0)
            followed.again = False
            keys = {f[0] for f in followed.followers}
        if changed:
            # a new answer, or trouble: each follower's reconcile takes the answer (or, after a
            # failure, asks itself and reports the problem with its own backoff)
            for key in sorted(keys):
                self.enqueue(key)

    def expedite(self, model: str) -> int:
        """Make every followed question about registered model `model` due now (a webhook said its
        aliases moved); returns how many."""
        with self._lock:
            hits = [f for f in self._questions.values() if getattr(f.recipe[3], "name", None) == model]
            for followed in hits:
                followed.next_due = 0.0
                followed.again = followed.asking
                followed.expedited = True
        return len(hits)

    def asking(self) -> int:
        """Questions the refresher is asking right now."""
        with self._lock:
            return sum(1 for f in self._questions.values() if f.asking)

    def __len__(self) -> int:
        return len(self._questions)
