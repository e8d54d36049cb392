"""Co-training of teacher, student and discriminator (``python -m rirn.train``)."""
