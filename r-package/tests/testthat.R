library(testthat)
library(saveR)
test_check("saveR")
