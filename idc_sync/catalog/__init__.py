"""The installed IDC release as tables: resolve a selection into series records with DuckDB
over idc-index-data's parquet files. The only package that speaks DuckDB SQL."""
