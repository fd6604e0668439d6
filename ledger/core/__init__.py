"""Pure rules and formulas: resource types, units, admission arithmetic, error types. No IO."""
