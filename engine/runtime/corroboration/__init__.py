"""The corroboration stage: basin (group) rules across telemetry partitions.

``stage`` holds the topic, the Faust tables and the agent that applies routed events in
event time; ``groups`` the groups' state in those tables (read back after a rebalance,
and what a group takes as its alerts and the tables' changes); ``routing`` the sending
side (events and watermarks from the alerts agent); ``wire`` the record format and table
names both sides and the Kafka topic layout share; ``host`` what the stage needs of the
topology. The rule logic itself is ``engine.evaluation.corroboration``.
"""
