module example.com/Kiln/words

go 1.19
