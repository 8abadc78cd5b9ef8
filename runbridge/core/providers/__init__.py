"""Platform providers: one sans-IO module per platform (see ``base.Provider``)."""
