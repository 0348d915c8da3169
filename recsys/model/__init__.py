"""The two-tower retrieval model (DESIGN §5): inputs, towers, task, training and export."""
