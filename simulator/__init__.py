"""A simulated sales platform: production database, read replica and replica API."""
