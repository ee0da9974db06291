"""pytest plugin: fixtures to build, sign and send Montra events to handlers in-process."""
