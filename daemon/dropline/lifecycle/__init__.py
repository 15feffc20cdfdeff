"""The life of a file in durable steps: claim, finish, requeue, recovery, and
the decision of what the end of a stage attempt means."""
