"""Training: the shared loop (`gie train`), run folders, data, and the trainer registry that methods extend."""
