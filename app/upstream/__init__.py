"""The Paysera side: the OAuth client-credentials client (`oauth`) and the proxy (`proxy`)."""
