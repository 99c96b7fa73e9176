"""The things that are counted, in one table: which counters each has and where they live.

Every SQL statement that names a counted table or column takes the names from here, so a
name never comes from a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TargetType = Literal["post", "article", "post_comment", "article_comment"]
ActionKind = Literal["like", "collect", "share"]
ACTION_KINDS: tuple[ActionKind, ...] = ("like", "collect", "share")

# Column that each action kind is counted into.
ACTION_COLUMNS: dict[ActionKind, str] = {"like": "likes", "collect": "collects", "share": "shares"}


@dataclass(frozen=True)
class Target:
    type: TargetType
    table: str
    url: str  # path segment in the API
    actions: tuple[ActionKind, ...]  # kinds users can record on it (source of truth: user_actions)
    buffered: tuple[str, ...]  # fields counted through the Redis buffer (views)
    comment_table: str | None = None  # its comments, counted into `comments`
    comment_fk: str | None = None

    @property
    def recounted(self) -> tuple[str, ...]:
        """Columns a recount sets from the source-of-truth tables."""
        cols = tuple(ACTION_COLUMNS[k] for k in self.actions)
        return (*cols, "comments") if self.comment_table else cols


TARGETS: dict[TargetType, Target] = {
    "post": Target("post", "posts", "posts", ACTION_KINDS, ("views",), "post_comments", "post_id"),
    "article": Target(
        "article",
        "articles",
        "articles",
        ACTION_KINDS,
        ("views",),
        "article_comments",
        "article_id",
    ),
    "post_comment": Target("post_comment", "post_comments", "post-comments", ("like",), ()),
    "article_comment": Target(
        "article_comment", "article_comments", "article-comments", ("like",), ()
    ),
}
TARGETS_BY_URL: dict[str, Target] = {t.url: t for t in TARGETS.values()}

# Each (target, field) pair buffered in Redis, e.g. ("post", "views").
BUFFERED: tuple[tuple[TargetType, str], ...] = tuple(
    (t.type, f) for t in TARGETS.values() for f in t.buffered
)
