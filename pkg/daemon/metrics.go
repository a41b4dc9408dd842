package daemon

import "expvar"

// expvarPublish is expvar.Publish, named so the one call site reads clearly.
func expvarPublish(name string, v expvar.Var) { expvar.Publish(name, v) }
