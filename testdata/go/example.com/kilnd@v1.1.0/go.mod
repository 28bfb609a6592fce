module example.com/kilnd

go 1.19
