module example.com/plugins/greet

go 1.19

require (
	example.com/kilnd v1.0.0
	example.com/Kiln/words v1.1.0
)
