"""The named policies: each a short composition of filters, scorers, a picker and a script."""
