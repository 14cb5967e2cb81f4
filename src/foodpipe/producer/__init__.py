"""The order producer: mock data, order ids, rate limiting and the produce loop."""
