"""beat: sends the periodic tasks of the schedule."""
