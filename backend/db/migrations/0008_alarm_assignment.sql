-- Who handed an alarm to its assignee, and when.
ALTER TABLE alarms
    ADD COLUMN assigned_by text,
    ADD COLUMN assigned_at timestamptz;
