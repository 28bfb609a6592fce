module example.com/plugins/echo

go 1.19

require (
	example.com/kilnd v1.0.0
)
