"""The shipped rule set: field report 003's eleven scheduled jobs, over the example tables of
migration 0004. Same names and schedules as the report; each one is data, not a task.

Thresholds the report does not give (how idle a chat may be, how long before it ends the user
is warned, when an ended chat counts as long inactive) are ours; MAINTENANCE_RULE_OVERRIDES
changes any field of a default rule by name (`make run` shortens them for the demo).
"""

from __future__ import annotations

from typing import Any

MINUTE = 60.0
DAY = 86_400.0
CHAT_IDLE_END = 10 * MINUTE  # an active chat without a message this long is ended
CHAT_WARN_BEFORE = 2 * MINUTE  # "your chat ends in 2 minutes"
CHAT_ARCHIVE_AFTER = 30 * DAY

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "name": "process-customer-service-queue",
        "kind": "assignment",
        "every": 30,
        "table": "chats",
        "waiting": "waiting",
        "assigned": "active",
        "assignee": "agent_id",
        "order_by": "created_at",
        "set_now": ["assigned_at", "last_message_at"],
        "pool": "agents",
        "pool_capacity": "capacity",
        "pool_guards": [{"column": "status", "op": "eq", "value": "available"}],
        "batch_size": 200,
    },
    {
        "name": "auto-end-timeout-chats",
        "kind": "transition",
        "every": 30,
        "table": "chats",
        "timestamp": "last_message_at",
        "after": CHAT_IDLE_END,
        "from": ["active"],
        "to": "ended",
        "set_now": ["ended_at"],
    },
    {
        "name": "send-timeout-warnings",
        "kind": "warning",
        "every": 30,
        "table": "chats",
        "timestamp": "last_message_at",
        "after": CHAT_IDLE_END,
        "window": CHAT_WARN_BEFORE,
        "statuses": ["active"],
        "recipient": "user_id",
        "message": "This chat will end soon because it has been idle.",
    },
    {
        "name": "cancel-expired-tasks",
        "kind": "transition",
        "every": MINUTE,
        "table": "marketplace_tasks",
        "timestamp": "deadline_at",
        "from": ["open"],
        "to": "cancelled",
        "set_now": ["cancelled_at"],
    },
    {
        "name": "check-expired-coupons",
        "kind": "transition",
        "every": 5 * MINUTE,
        "table": "coupons",
        "timestamp": "expires_at",
        "from": ["active"],
        "to": "expired",
        "set_now": ["expired_at"],
        "batch_size": 5000,
    },
    {
        "name": "check-expired-invitation-codes",
        "kind": "transition",
        "every": 5 * MINUTE,
        "table": "invitation_codes",
        "timestamp": "expires_at",
        "from": ["active"],
        "to": "expired",
        "set_now": ["expired_at"],
    },
    {
        "name": "check-expired-points",
        "kind": "balance_expiry",
        "every": 5 * MINUTE,
        "table": "point_grants",
        "timestamp": "expires_at",
        "from": ["active"],
        "to": "expired",
        "set_now": ["expired_at"],
        "amount": "points",
        "owner": "user_id",
        "balance_table": "point_balances",
        "balance_key": "user_id",
        "balance_column": "balance",
    },
    {
        "name": "check-and-end-activities",
        "kind": "transition",
        "every": 5 * MINUTE,
        "table": "activities",
        "timestamp": "ends_at",
        "from": ["active"],
        "to": "ended",
        "set_now": ["ended_at"],
    },
    {
        "name": "update-all-users-statistics",
        "kind": "rollup",
        "every": 10 * MINUTE,
        "target": "user_statistics",
        "target_key": "user_id",
        "keys_from": [
            {"table": "chats", "column": "user_id"},
            {"table": "chat_messages", "column": "sender_id"},
            {"table": "marketplace_tasks", "column": "poster_id"},
        ],
        "aggregates": [
            {"column": "chats", "function": "count", "table": "chats", "key": "user_id"},
            {
                "column": "messages",
                "function": "count",
                "table": "chat_messages",
                "key": "sender_id",
            },
            {
                "column": "tasks_posted",
                "function": "count",
                "table": "marketplace_tasks",
                "key": "poster_id",
            },
        ],
        "set_now": ["updated_at"],
        "incremental": True,  # triggers of migration 0008
        "batch_size": 500,
        "soft_time_limit": 500,
        "time_limit": 540,
    },
    {
        "name": "cleanup-long-inactive-chats",
        "kind": "transition",
        "cron": "0 2 * * *",
        "catch_up": "once",
        "table": "chats",
        "timestamp": "last_message_at",
        "after": CHAT_ARCHIVE_AFTER,
        "from": ["ended"],
        "to": "archived",
        "batch_size": 5000,
        "soft_time_limit": 1700,
        "time_limit": 1800,
    },
    {
        "name": "update-featured-task-experts-response-time",
        "kind": "rollup",
        "cron": "0 3 * * *",
        "catch_up": "once",
        "target": "expert_stats",
        "target_key": "expert_id",
        "keys_from": [{"table": "marketplace_tasks", "column": "expert_id"}],
        "aggregates": [
            {
                "column": "tasks",
                "function": "count",
                "table": "marketplace_tasks",
                "key": "expert_id",
            },
            {
                "column": "avg_response_seconds",
                "function": "avg",
                "table": "marketplace_tasks",
                "key": "expert_id",
                "of": "response_seconds",
                "guards": [{"column": "response_seconds", "op": "not_null"}],
            },
        ],
        "set_now": ["updated_at"],
        "incremental": True,  # triggers of migration 0008
        "batch_size": 500,
        "soft_time_limit": 1700,
        "time_limit": 1800,
    },
]

# The demo of `make run` (README): a coupon expires within seconds, an idle chat is warned
# after 20 s and ended after 40 s.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "process-customer-service-queue": {"every": 3},
    "auto-end-timeout-chats": {"every": 3, "after": 40},
    "send-timeout-warnings": {"every": 3, "after": 40, "window": 20},
    "check-expired-coupons": {"every": 3},
}
