package testenv

// FindModuleRoot is ModuleRoot for code with no test to fail, such as a
// sync.Once that builds artifacts several tests share: the caller turns the
// error into a failure of whichever test asked first.
func FindModuleRoot() (string, error) { return moduleRoot() }
