"""The transaction stream: contract, features, profiles, synthetic data and files; `TRANSACTIONS` is its Stream."""
