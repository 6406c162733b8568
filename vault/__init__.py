"""oubli: an encrypted personal-data vault with crypto-shredding."""
