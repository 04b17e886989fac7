"""`anyanomaly eval`: AnyAnomaly's evaluation on C-ShT, C-Ave, ShanghaiTech, Avenue and custom data."""
