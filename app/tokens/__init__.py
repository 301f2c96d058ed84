"""The token service: L1 -> shared store -> fleet single flight -> upstream; refresh ahead."""
