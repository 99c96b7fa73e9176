"""maintenance rules: example tables for report 003's jobs, rule notifications and runs

The example tables (coupons, invitation codes, point grants and balances, activities,
marketplace tasks, agents, chats and messages, user and expert statistics) are what the default
rule set works on (celery_stack_core.rules.defaults). rule_notifications is unique per rule +
row, so a warning can never be sent twice; rule_runs records each run by its task id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:47:40.890661
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('activities',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('active', 'ended')", name=op.f('ck_activities_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activities'))
    )
    op.create_index('ix_activities_status_ends', 'activities', ['status', 'ends_at'], unique=False)
    op.create_table('agents',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='available', nullable=False),
    sa.Column('capacity', sa.Integer(), server_default='3', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('available', 'offline')", name=op.f('ck_agents_status')),
    sa.CheckConstraint('capacity >= 0', name=op.f('ck_agents_capacity')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents'))
    )
    op.create_table('coupons',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('user_id', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('active', 'used', 'expired')", name=op.f('ck_coupons_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coupons')),
    sa.UniqueConstraint('code', name=op.f('uq_coupons_code'))
    )
    op.create_index('ix_coupons_status_expires', 'coupons', ['status', 'expires_at'], unique=False)
    op.create_table('expert_stats',
    sa.Column('expert_id', sa.Text(), nullable=False),
    sa.Column('tasks', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('avg_response_seconds', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('expert_id', name=op.f('pk_expert_stats'))
    )
    op.create_table('invitation_codes',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('active', 'used', 'expired')", name=op.f('ck_invitation_codes_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invitation_codes')),
    sa.UniqueConstraint('code', name=op.f('uq_invitation_codes_code'))
    )
    op.create_index('ix_invitation_codes_status_expires', 'invitation_codes', ['status', 'expires_at'], unique=False)
    op.create_table('marketplace_tasks',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('poster_id', sa.Text(), nullable=False),
    sa.Column('expert_id', sa.Text(), nullable=True),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='open', nullable=False),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('response_seconds', sa.Float(), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('open', 'taken', 'done', 'cancelled')", name=op.f('ck_marketplace_tasks_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_marketplace_tasks'))
    )
    op.create_index(op.f('ix_marketplace_tasks_expert_id'), 'marketplace_tasks', ['expert_id'], unique=False)
    op.create_index(op.f('ix_marketplace_tasks_poster_id'), 'marketplace_tasks', ['poster_id'], unique=False)
    op.create_index('ix_marketplace_tasks_status_deadline', 'marketplace_tasks', ['status', 'deadline_at'], unique=False)
    op.create_table('point_balances',
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('balance', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_point_balances'))
    )
    op.create_table('point_grants',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('active', 'expired')", name=op.f('ck_point_grants_status')),
    sa.CheckConstraint('points > 0', name=op.f('ck_point_grants_points')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_point_grants'))
    )
    op.create_index('ix_point_grants_status_expires', 'point_grants', ['status', 'expires_at'], unique=False)
    op.create_index(op.f('ix_point_grants_user_id'), 'point_grants', ['user_id'], unique=False)
    op.create_table('rule_notifications',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('row_key', sa.Text(), nullable=False),
    sa.Column('recipient', sa.Text(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rule_notifications')),
    sa.UniqueConstraint('rule', 'row_key', name='uq_rule_notifications_rule_row')
    )
    op.create_table('rule_runs',
    sa.Column('task_id', sa.Text(), nullable=False),
    sa.Column('rule', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='running', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='1', nullable=False),
    sa.Column('rows', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('batches', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f('ck_rule_runs_status')),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_rule_runs'))
    )
    op.create_index('ix_rule_runs_rule_started', 'rule_runs', ['rule', 'started_at'], unique=False)
    op.create_table('user_statistics',
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('chats', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('messages', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('tasks_posted', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_user_statistics'))
    )
    op.create_table('chats',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('agent_id', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.Text(), server_default='waiting', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_message_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status <> 'active' OR agent_id IS NOT NULL", name=op.f('ck_chats_agent')),
    sa.CheckConstraint("status IN ('waiting', 'active', 'ended', 'archived')", name=op.f('ck_chats_status')),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_chats_agent_id_agents'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chats'))
    )
    op.create_index('ix_chats_agent_active', 'chats', ['agent_id'], unique=False, postgresql_where=sa.text("status = 'active'"))
    op.create_index('ix_chats_status_created', 'chats', ['status', 'created_at'], unique=False)
    op.create_index('ix_chats_status_last_message', 'chats', ['status', 'last_message_at'], unique=False)
    op.create_index(op.f('ix_chats_user_id'), 'chats', ['user_id'], unique=False)
    op.create_table('chat_messages',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('sender_id', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['chats.id'], name=op.f('fk_chat_messages_chat_id_chats'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_messages'))
    )
    op.create_index(op.f('ix_chat_messages_chat_id'), 'chat_messages', ['chat_id'], unique=False)
    op.create_index(op.f('ix_chat_messages_sender_id'), 'chat_messages', ['sender_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_chat_messages_sender_id'), table_name='chat_messages')
    op.drop_index(op.f('ix_chat_messages_chat_id'), table_name='chat_messages')
    op.drop_table('chat_messages')
    op.drop_index(op.f('ix_chats_user_id'), table_name='chats')
    op.drop_index('ix_chats_status_last_message', table_name='chats')
    op.drop_index('ix_chats_status_created', table_name='chats')
    op.drop_index('ix_chats_agent_active', table_name='chats', postgresql_where=sa.text("status = 'active'"))
    op.drop_table('chats')
    op.drop_table('user_statistics')
    op.drop_index('ix_rule_runs_rule_started', table_name='rule_runs')
    op.drop_table('rule_runs')
    op.drop_table('rule_notifications')
    op.drop_index(op.f('ix_point_grants_user_id'), table_name='point_grants')
    op.drop_index('ix_point_grants_status_expires', table_name='point_grants')
    op.drop_table('point_grants')
    op.drop_table('point_balances')
    op.drop_index('ix_marketplace_tasks_status_deadline', table_name='marketplace_tasks')
    op.drop_index(op.f('ix_marketplace_tasks_poster_id'), table_name='marketplace_tasks')
    op.drop_index(op.f('ix_marketplace_tasks_expert_id'), table_name='marketplace_tasks')
    op.drop_table('marketplace_tasks')
    op.drop_index('ix_invitation_codes_status_expires', table_name='invitation_codes')
    op.drop_table('invitation_codes')
    op.drop_table('expert_stats')
    op.drop_index('ix_coupons_status_expires', table_name='coupons')
    op.drop_table('coupons')
    op.drop_table('agents')
    op.drop_index('ix_activities_status_ends', table_name='activities')
    op.drop_table('activities')
