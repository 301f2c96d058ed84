"""The Paysera side: the upstream OAuth client and a local emulator of the Paysera API."""
