"""Who is calling: API keys and certificate identities, mapped to configured callers."""
