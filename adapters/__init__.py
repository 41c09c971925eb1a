"""Adapters: public data sets turned into salerank's data contract."""
