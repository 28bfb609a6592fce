module example.com/plugins/shout

go 1.19

require (
	example.com/kilnd v1.0.0
)
