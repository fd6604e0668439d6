"""What each running VM really uses (CPU, memory, disk and network), sampled beside what it was promised."""
