"""foodpipe: a Kafka -> PostgreSQL food-order pipeline that loses nothing."""

__version__ = "0.1.0"
